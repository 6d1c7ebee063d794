"""hashlab's benchmarks and the fast BPF test runner they share with the fuzz tests.

* :mod:`.tools` -- small C/BPF programs compiled at run time into the bench cache
  (``<cache>/bench/...``, content-keyed; nothing built is ever committed);
* :mod:`.testrun` -- ``BPF_PROG_TEST_RUN`` over many frames per process (the
  ``hashlab-testrun`` helper: one bpf(2) call per frame, no Python in the loop);
* :mod:`.differential` -- a BPF RSS program against the oracle, frame by frame;
* :mod:`.program` -- ``hashlab bench program``: ns per packet of the steering
  programs (upstream QEMU's, ours, the table-driven prototype) against a C floor;
* :mod:`.report` -- the tables, ratios and JSON of the results (pure, no I/O).
"""
