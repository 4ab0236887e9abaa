"""Training apps: PathCLIP continued pretraining (``pathvlm train clip``); the reasoner stages follow."""
