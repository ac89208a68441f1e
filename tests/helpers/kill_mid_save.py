"""Run ``jaxcnn.train`` and SIGKILL it in the middle of a checkpoint save.

Orbax finalizes three temporary folders per save (``position``, ``state``, then the
step folder itself), renaming each. ``KILL_AT_FINALIZE=N`` kills the process at the
start of the N-th such rename, with the files of that save partly renamed.
"""

import os
import signal
import sys

from orbax.checkpoint._src.path import atomicity

from jaxcnn import train

KILL_AT = int(os.environ["KILL_AT_FINALIZE"])
original_finalize = atomicity.AtomicRenameTemporaryPath.finalize
calls = 0


async def finalize_or_die(self, *args, **kwargs):
    global calls
    calls += 1
    if calls == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
    return await original_finalize(self, *args, **kwargs)


atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
sys.exit(train.cli_main(sys.argv[1:]))
