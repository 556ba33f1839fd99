"""How a CPU process of the pipeline uses its threads: numpy's BLAS on one.

OpenBLAS's idle workers busy-wait for about 0.1 s after every call: a process that decodes
the BFM (``u + W a``) for every frame keeps one of them spinning all the time between
frames, on the cores the other steps and the video codecs need (measured on the 2-core
box: 0.9 ms of CPU for a 0.45 ms decode on two threads, 0.7 ms on one). The products the
steps compute are small, one thread does them as fast. The Triton adapter applies this
to every CPU model instance; the CPU benchmarks do the same so they measure what is served.
"""

from __future__ import annotations


def blas_on_one_thread() -> None:
    """Limit numpy's BLAS (any implementation threadpoolctl knows) to one thread, for this
    whole process."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
