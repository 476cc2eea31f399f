"""One file per detector. Importing this package imports none of them: ``anomalens.catalog`` imports a
detector's module when its class is first asked for (the registry's table names the module), so loading a
PaDiM run does not pay for the imports of every other model (Reverse Distillation's torchvision ResNet blocks
pull in ``torchvision.ops`` and ``torch._dynamo``: 1.4-2.2 s per process)."""
