"""A small-scale reproduction of PonderLM-2's claims against its baselines, one command:
``tools/reproduce.py`` (``examples/reproduce_small.sh``). ``recipes`` defines the arms and their
sizes, ``runner`` runs one arm, ``driver`` all of them, ``accounting`` their costs, ``evaluate``
the final scores and ``report`` the table and plots."""
