import os
import sys

# One worker per core: BLAS must not spawn threads of its own behind the pinning.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from wholecall.worker.main import main  # noqa: E402

sys.exit(main())
