"""What the checks (studio.checks) are applied to: the rows they score (`rows`: a file's or a run's prompts,
reference answers and other cells), the preflight of a data file's own answers (`preflight`), and the evaluation of
base vs tuned on a run's held-out prompts (`evaluate`)."""
