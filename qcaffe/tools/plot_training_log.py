"""``qcaffe plot_training_log CHART_TYPE OUT.png LOG1.log [LOG2.log ...]``.

Caffe equivalent: tools/extra/plot_training_log.py.example (Python 2, driven by
parse_log.sh).  Same chart numbering (0-7: test accuracy / test loss / train learning rate /
train loss against iterations or seconds), same rules (logs must end in ".log", the output
in ".png"), one line per log labelled with the log's name.  Differences: the data are read
directly from the log (parse_log.sh's awk field positions no longer match today's
"Iteration N (x iter/s, ...), loss = X" line), colours and markers are fixed rather than
random, and the figure is only saved, never shown.  Needs matplotlib.
"""
import argparse
import os
import re

from . import ArgumentParser, ToolError, run_main
from .parse_log import extract_datetime_from_line, get_log_created_year

LOG_SUFFIX = '.log'
SEPARATOR = '  vs. '
X_FIELDS = ('Iters', 'Seconds')
# Caffe sorts the field names and pairs every y field with each x field.
Y_FIELDS = ('Test accuracy', 'Test loss', 'Train learning rate', 'Train loss')
CHART_TYPES = ['%s%s%s' % (y, SEPARATOR, x) for y in Y_FIELDS for x in X_FIELDS]

_ITER_TEST = re.compile(r'Iteration (\d+), Testing net')
_TEST_OUT = re.compile(r'Test net output #([01]): \S+ = ([\.\deE+-]+)')
_TRAIN_LOSS = re.compile(r'Iteration (\d+).*, loss = ([\.\deE+-]+)')
_LR = re.compile(r'Iteration (\d+), lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)')


def chart_help():
    lines = ['Supported chart types:']
    lines += ['    %d: %s' % (i, c) for i, c in enumerate(CHART_TYPES)]
    return '\n'.join(lines)


def parse_series(path):
    """The series plot charts need: ``{'Test': {...}, 'Train': {...}}`` of column lists.

    Test: Iters, Seconds, accuracy (output #0), loss (output #1), as parse_log.sh assumes;
    Train: Iters, Seconds, loss (the smoothed loss of the display line), learning rate.
    """
    year = get_log_created_year(path)
    start = None
    test = {'Iters': [], 'Seconds': [], 'accuracy': [], 'loss': []}
    train = {'Iters': [], 'Seconds': [], 'loss': [], 'learning rate': []}
    lr_by_iter = {}
    with open(path, errors='replace') as f:
        for line in f:
            try:
                when = extract_datetime_from_line(line, year)
            except (ValueError, IndexError):
                continue
            if start is None:
                if '] Solving ' in line:
                    start = when
                continue
            seconds = (when - start).total_seconds()
            m = _ITER_TEST.search(line)
            if m:
                test['Iters'].append(int(m.group(1)))
                test['Seconds'].append(seconds)
                continue
            m = _TEST_OUT.search(line)
            if m and test['Iters']:
                key = 'accuracy' if m.group(1) == '0' else 'loss'
                if len(test[key]) < len(test['Iters']):
                    test[key].append(float(m.group(2)))
                continue
            m = _LR.search(line)
            if m:
                lr_by_iter[int(m.group(1))] = float(m.group(2))
                continue
            m = _TRAIN_LOSS.search(line)
            if m:
                train['Iters'].append(int(m.group(1)))
                train['Seconds'].append(seconds)
                train['loss'].append(float(m.group(2)))
    if start is None:
        raise ToolError("%s: no glog line containing '] Solving ' found; not a training log"
                        % path)
    train['learning rate'] = [lr_by_iter.get(i, float('nan')) for i in train['Iters']]
    return {'Test': test, 'Train': train}


def chart_data(series, chart_type):
    y_field, x_field = CHART_TYPES[chart_type].split(SEPARATOR)
    kind, name = y_field.split(' ', 1)
    table = series[kind]
    n = min(len(table[x_field]), len(table[name]))
    return table[x_field][:n], table[name][:n], x_field, y_field


def plot_chart(chart_type, path_to_png, path_to_logs):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise ToolError('plot_training_log needs matplotlib, which is not installed '
                        '(pip install matplotlib); parse_log writes the same data as CSV '
                        'without it') from None
    fig, ax = plt.subplots()
    markers = 'os^vD<>ph*'
    for i, path in enumerate(path_to_logs):
        x, y, x_field, y_field = chart_data(parse_series(path), chart_type)
        label = os.path.basename(path)[:-len(LOG_SUFFIX)]
        ax.plot(x, y, label=label, marker=markers[i % len(markers)], linewidth=0.75)
    y_field, x_field = CHART_TYPES[chart_type].split(SEPARATOR)
    loc = 'upper right' if ('loss' in y_field or 'learning rate' in y_field) else 'lower right'
    ax.legend(loc=loc, ncol=1)
    ax.set_title(CHART_TYPES[chart_type])
    ax.set_xlabel(x_field)
    ax.set_ylabel(y_field)
    try:
        fig.savefig(path_to_png)
    except OSError as e:
        raise ToolError('cannot write %s: %s' % (path_to_png, e.strerror or e)) from None
    finally:
        plt.close(fig)


def build_parser(prog):
    parser = ArgumentParser(
        prog=prog, description='Plot Caffe training logs. Log file names must end in "%s".\n%s'
        % (LOG_SUFFIX, chart_help()), formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument('chart_type', help='chart type 0-%d' % (len(CHART_TYPES) - 1))
    parser.add_argument('png', help='where to save the chart (.png)')
    parser.add_argument('logs', nargs='+', help='training logs (*.log)')
    return parser


def run(args):
    try:
        chart_type = int(args.chart_type)
    except ValueError:
        chart_type = -1
    if not 0 <= chart_type < len(CHART_TYPES):
        raise ToolError('%s is not a valid chart type; %s'
                        % (args.chart_type, chart_help().replace('\n    ', '; ')))
    if not args.png.endswith('.png'):
        raise ToolError('output path must end with .png, got %r' % args.png)
    for path in args.logs:
        if not os.path.exists(path):
            raise ToolError('log file %r does not exist' % path)
        if not path.endswith(LOG_SUFFIX):
            raise ToolError('log file %r must end in %s' % (path, LOG_SUFFIX))
    plot_chart(chart_type, args.png, args.logs)
    return 0


def main(argv=None, prog='plot_training_log', command=None):
    return run_main(build_parser, run, argv, prog)
