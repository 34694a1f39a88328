"""Person-facing pages: view-models, French/English text, templates and styles."""
