"""The classification page and its HTTP API, by concern: the service over one
predictor (:mod:`.service`), the page (:mod:`.page`), the text about the model
(:mod:`.cards`), the HTTP routes (:mod:`.api`), logins (:mod:`.auth`) and launching
(:mod:`.server`).
"""
