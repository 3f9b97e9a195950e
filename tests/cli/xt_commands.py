"""``python xt_commands.py [--check] JOBS``: run several `xt` commands one after the other in this
interpreter (click's `CliRunner`: one interpreter and torch start-up for all), for
`cli_helpers.xt_runs` and for a torchrun launch of several runs (tests/cli/test_torchrun.py).

JOBS is a JSON list of ``[args, env]``: the command line after ``xt`` and the environment set for
that command only (a null value unsets a variable). Prints, on a last line, the JSON list of
``[exit status, stdout, stderr]`` of each command. With ``--check`` the exit status is 1 when a
command exited non-zero (its output is printed first); without it, 0 whatever the commands gave.
An exception that a command does not turn into an exit status propagates (a traceback, status 1).
"""
from __future__ import annotations

import json
import sys

from click.testing import CliRunner

from xt.cli.main import cli


def main(argv: list[str]) -> int:
    check = argv[:1] == ["--check"]
    done = []
    for args, env in json.loads(argv[-1]):
        r = CliRunner().invoke(cli, args, env=env, prog_name="xt", catch_exceptions=False)
        done.append([r.exit_code, r.stdout, r.stderr])
        if check and r.exit_code != 0:
            print(r.stdout[-3000:] + r.stderr[-3000:], file=sys.stderr)
            return 1
    sys.stdout.write("\n" + json.dumps(done) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
