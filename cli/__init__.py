"""embedstore's click front end (installed as the ``embedstore_cli`` package): parse, call, print."""
