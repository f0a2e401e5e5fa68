"""Model sources: a string names a model (andromeda:<preset | checkpoint>, hf:<dir | model_type | matched:preset>,
xt:<preset>). spec.py parses and checks it before anything is built (torch-free, so a manifest validates
without torch); models.py builds it into a ModelBundle (the model, its tokenizer and its facts)."""
