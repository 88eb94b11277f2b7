"""Campaign service: the offer catalog and real-time next-best-offer (`Decide`); later campaigns, models,
batch selection, delivery and evaluation.

handlers.py -> service.py -> db.py; clients.py reaches profile and risk; scoring.py holds the propensity model.
"""
