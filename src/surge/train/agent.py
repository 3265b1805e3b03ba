"""torchrun as `surge train` runs it: `python -m surge.train.agent TORCHRUN-ARGS...`.

torchrun's own main, with its endings turned into exit codes (`surge.train.supervision`) that
`surge train` reports in one line, instead of torchrun's Python tracebacks: stopped by a signal
(Ctrl-C, SIGTERM), a rendezvous that not every machine joined in time, a run that diverged.
Not imported by `surge.train`, so that `python -m` runs it as a fresh module.
"""

from __future__ import annotations

import sys

from surge.train.supervision import FAILED, JOIN_TIMED_OUT, diverged_file


def main(argv: list[str] | None = None) -> int:
    from torch.distributed import DistNetworkError, DistStoreError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousTimeoutError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(sys.argv[1:] if argv is None else argv)
    except SignalException as exc:
        return 128 + int(exc.sigval)  # its ranks are stopped; `surge train` says why
    except RendezvousTimeoutError:  # dynamic rendezvous: join_timeout
        return JOIN_TIMED_OUT
    except (DistStoreError, DistNetworkError) as exc:
        # Static rendezvous: node 0's store waited for the others, or they for it.
        if "timed out" not in str(exc).lower():
            raise
        return JOIN_TIMED_OUT
    except ChildFailedError as exc:
        marker = diverged_file()
        if marker is None or not marker.exists():
            # Which rank failed and how (an exit code, a signal), without the traceback.
            print(exc, file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
