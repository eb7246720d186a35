"""``qcaffe parse_log LOGFILE OUTPUT_DIR [--verbose] [--delimiter ,]``.

Caffe equivalent: tools/extra/parse_log.py with tools/extra/extract_seconds.py.  Reads a
glog-format training log (``caffe train ... 2>&1 | tee x.log``) and writes ``<log>.train``
and ``<log>.test`` CSV files in OUTPUT_DIR with the columns NumIters, Seconds, LearningRate
and one column per net output blob, exactly as Caffe's script does (same regexes, same row
grouping, same Excel CSV dialect), so existing plotting notebooks read our files unchanged.
"""
import collections
import csv
import datetime
import os
import re

from . import ArgumentParser, ToolError, run_main

REGEX_ITERATION = re.compile(r'Iteration (\d+)')
REGEX_TRAIN_OUTPUT = re.compile(r'Train net output #(\d+): (\S+) = ([\.\deE+-]+)')
REGEX_TEST_OUTPUT = re.compile(r'Test net output #(\d+): (\S+) = ([\.\deE+-]+)')
REGEX_LEARNING_RATE = re.compile(r'lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)')


# ------------------------------------------------------------ extract_seconds.py
def extract_datetime_from_line(line, year):
    """Time stamp of a glog line ``I0210 13:39:22.381027 25210 solver.cpp:204] ...``.

    Raises ValueError (or IndexError for a blank line) when the prefix does not parse.
    """
    fields = line.strip().split()
    month = int(fields[0][1:3])
    day = int(fields[0][3:])
    timestamp = fields[1]
    pos = timestamp.rfind('.')
    hour, minute, second = [int(x) for x in timestamp[:pos].split(':')]
    microsecond = int(timestamp[pos + 1:])
    return datetime.datetime(year, month, day, hour, minute, second, microsecond)


def get_log_created_year(path):
    """glog lines carry no year: Caffe takes it from the log file's ctime."""
    return datetime.datetime.fromtimestamp(os.path.getctime(path)).year


def get_start_time(line_iterable, year):
    """Time of the first line containing "Solving" (None when there is none)."""
    for line in line_iterable:
        line = line.strip()
        if line.find('Solving') != -1:
            return extract_datetime_from_line(line, year)
    return None


# ------------------------------------------------------------------ parse_log.py
def parse_log(path_to_log):
    """Return ``(train_dict_list, test_dict_list)``: lists of OrderedDict rows."""
    iteration = -1
    learning_rate = float('NaN')
    train_dict_list, test_dict_list = [], []
    train_row = test_row = None

    logfile_year = get_log_created_year(path_to_log)
    with open(path_to_log, errors='replace') as f:
        try:
            start_time = get_start_time(f, logfile_year)
        except (ValueError, IndexError):
            start_time = None
        if start_time is None:
            raise ToolError("%s: no glog line containing 'Solving' found; parse_log reads the "
                            "stderr of 'qcaffe train' (or 'caffe train'), captured with "
                            "2>&1 | tee LOGFILE" % path_to_log)
        last_time = start_time

        for line in f:
            iteration_match = REGEX_ITERATION.search(line)
            if iteration_match:
                iteration = float(iteration_match.group(1))
            if iteration == -1:
                # Only start parsing for other stuff once the first iteration is found.
                continue
            try:
                time = extract_datetime_from_line(line, logfile_year)
            except (ValueError, IndexError):
                # Lines without a glog prefix (e.g. printed while resuming) are skipped.
                continue
            # The log crossed a new year.
            if time.month < last_time.month:
                logfile_year += 1
                time = extract_datetime_from_line(line, logfile_year)
            last_time = time
            seconds = (time - start_time).total_seconds()

            learning_rate_match = REGEX_LEARNING_RATE.search(line)
            if learning_rate_match:
                learning_rate = float(learning_rate_match.group(1))

            train_dict_list, train_row = parse_line_for_net_output(
                REGEX_TRAIN_OUTPUT, train_row, train_dict_list,
                line, iteration, seconds, learning_rate)
            test_dict_list, test_row = parse_line_for_net_output(
                REGEX_TEST_OUTPUT, test_row, test_dict_list,
                line, iteration, seconds, learning_rate)

    fix_initial_nan_learning_rate(train_dict_list)
    fix_initial_nan_learning_rate(test_dict_list)
    return train_dict_list, test_dict_list


def parse_line_for_net_output(regex_obj, row, row_dict_list, line, iteration, seconds,
                              learning_rate):
    """Parse one line for a train or test output; returns ``(row_dict_list, row)``.

    A row is complete when it has as many columns as the first row; the first row itself is
    pushed when the next iteration starts.
    """
    output_match = regex_obj.search(line)
    if output_match:
        if not row or row['NumIters'] != iteration:
            if row:
                row_dict_list.append(row)
            row = collections.OrderedDict([
                ('NumIters', iteration),
                ('Seconds', seconds),
                ('LearningRate', learning_rate),
            ])
        row[output_match.group(2)] = float(output_match.group(3))

    if row and len(row_dict_list) >= 1 and len(row) == len(row_dict_list[0]):
        row_dict_list.append(row)
        row = None
    return row_dict_list, row


def fix_initial_nan_learning_rate(dict_list):
    """The lr is logged after the first test/train outputs: copy it from the second row."""
    if len(dict_list) > 1:
        dict_list[0]['LearningRate'] = dict_list[1]['LearningRate']


def save_csv_files(logfile_path, output_dir, train_dict_list, test_dict_list,
                   delimiter=',', verbose=False):
    """Write ``<output_dir>/<log basename>.train`` and ``.test``; return the paths written."""
    base = os.path.join(output_dir, os.path.basename(logfile_path))
    written = []
    for suffix, rows in (('.train', train_dict_list), ('.test', test_dict_list)):
        if write_csv(base + suffix, rows, delimiter, verbose):
            written.append(base + suffix)
    return written


class _Dialect(csv.excel):
    pass


def write_csv(output_filename, dict_list, delimiter, verbose=False):
    """Caffe writes with the Excel dialect (CRLF line ends) and the given delimiter."""
    if not dict_list:
        if verbose:
            print('Not writing %s; no lines to write' % output_filename)
        return False
    dialect = type('ParseLogDialect', (_Dialect,), {'delimiter': delimiter})
    try:
        with open(output_filename, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(dict_list[0].keys()), dialect=dialect)
            writer.writeheader()
            writer.writerows(dict_list)
    except OSError as e:
        raise ToolError('cannot write %s: %s' % (output_filename, e.strerror or e)) from None
    if verbose:
        print('Wrote %s' % output_filename)
    return True


# ------------------------------------------------------------------------ command
def build_parser(prog):
    parser = ArgumentParser(prog=prog, description='Parse a Caffe training log into two CSV '
                            'files containing training and testing information')
    parser.add_argument('logfile_path', help='Path to log file')
    parser.add_argument('output_dir', help='Directory in which to place output CSV files')
    parser.add_bool_flag('verbose', help='Print some extra info (e.g., output filenames)')
    parser.add_flag('delimiter', default=',',
                    help="Column delimiter in output files (default: '%(default)s')")
    return parser


def run(args):
    if not os.path.isfile(args.logfile_path):
        raise ToolError('log file %r does not exist' % args.logfile_path)
    if not os.path.isdir(args.output_dir):
        raise ToolError('output directory %r does not exist' % args.output_dir)
    if len(args.delimiter) != 1:
        raise ToolError('--delimiter must be a single character, got %r' % args.delimiter)
    train, test = parse_log(args.logfile_path)
    save_csv_files(args.logfile_path, args.output_dir, train, test,
                   delimiter=args.delimiter, verbose=args.verbose)
    return 0


def main(argv=None, prog='parse_log', command=None):
    return run_main(build_parser, run, argv, prog)
