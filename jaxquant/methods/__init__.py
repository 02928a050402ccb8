"""PTQ methods as pure array functions (GPTQ, AWQ, SmoothQuant) and their glue."""
