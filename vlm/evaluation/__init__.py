"""Evaluation: vision-language tasks (open-ended VQA, POPE yes/no) and text multiple choice."""
