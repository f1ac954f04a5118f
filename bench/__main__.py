"""``python -m bench`` (``make bench``): the engine tables, the peak-memory tables, the
kernel/precision tables, the sparse-CGE table, the ResNet-20 FeatureReuseEvaluator vs block-restart
table (``bench.resnet --quick``), then the MeZO step table (``bench.mezo``, fp32 only; when
transformers is installed: the ``hf`` extra), then the constrained-solver table
(``--no-constrained`` skips it), then the Ray scaling table when ray is installed
(``--no-distributed`` skips it)."""

import sys

from . import engine, kernels, memory, resnet, sparsity

args = [a for a in sys.argv[1:] if a not in ("--no-constrained", "--no-distributed")]
engine.main(args)
memory.main([])
kernels.main([])
sparsity.main([])
resnet.main(["--quick"])

from zeroth._optional import available  # noqa: E402

if available("transformers"):
    from . import mezo

    mezo.main(["--dtypes", "fp32"])
if "--no-constrained" not in sys.argv:
    from .constrained.__main__ import main as constrained_main

    constrained_main([])

if "--no-distributed" not in sys.argv and available("ray"):
    from .distributed import main as distributed_main

    distributed_main([])
