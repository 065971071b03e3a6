"""The bottom layer: what every other layer may use and that knows nothing of cells.

- :mod:`.files`: atomic writes, safe file names.
- :mod:`.runtime`: the device and the process's place in a ``torchrun`` job.
- :mod:`.compat`: every private torch/torchvision name the package uses, in one place.
- :mod:`.progress`: progress bars, as plain lines in log files.
"""
