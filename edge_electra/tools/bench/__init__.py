"""Latency, throughput, memory, cold start and accuracy of bundles, side by side, here or over SSH.

    harness.py  the timing loops (interleaved across bundles), cold start, accuracy, compute floor
    sysinfo.py  the machine: CPU model and flags, threads, library versions, OS, measured GEMM rate
    report.py   terminal table, JSON, CSV and a PNG of the latency distributions
    remote.py   copy bundles and a minimal runtime to a device over SSH, run there, fetch the JSON
    cli.py      `edge-electra bench`
"""
