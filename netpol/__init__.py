"""NetworkPolicy: the object model, its verdicts, and their enforcement."""
