"""``python -m qcaffe.compat {path|install|uninstall} [--user] [--dir D]``: the caffe shim."""
import argparse
import sys

from . import install, shim_path, uninstall


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m qcaffe.compat',
        description='Make a plain "import caffe" resolve to qcaffe (opt-in).')
    parser.add_argument('command', choices=('path', 'install', 'uninstall'),
                        help='path: print the folder to add to PYTHONPATH; install/uninstall: '
                             'write/remove a .pth file in site-packages')
    parser.add_argument('--user', action='store_true',
                        help='use the per-user site-packages instead of the environment\'s')
    parser.add_argument('--dir', default=None,
                        help='write/remove the .pth file in this site directory instead')
    args = parser.parse_args(argv)
    if args.command == 'path':
        print(shim_path())
    elif args.command == 'install':
        print('wrote %s: "import caffe" now loads qcaffe' % install(args.user, args.dir))
    else:
        path = uninstall(args.user, args.dir)
        print('removed %s' % path if path else 'nothing to remove')
    return 0


if __name__ == '__main__':
    sys.exit(main())
