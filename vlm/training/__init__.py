"""Composer glue: the model adapter, data loaders, LR schedules, callbacks and the Trainer set-up."""
