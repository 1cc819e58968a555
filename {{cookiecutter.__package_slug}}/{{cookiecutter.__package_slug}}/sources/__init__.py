"""Job sources that plug into the runtime through `worker.Source` (docs/worker.md).

Pick one in `qq.py` with `Worker(..., source=...)`; without one, the worker runs your writer.
"""
