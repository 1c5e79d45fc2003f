"""The lab: a whole demo site on one machine (``python -m lab``, scripts/demo.sh).

Not part of any installed package; it imports agent and collector to run both sides.
"""
