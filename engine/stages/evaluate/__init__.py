"""`make evaluate`: weak localisation scored against the Abnormal GT boxes (run.py) and its helpers."""
