"""The kubetune operator: FineTuneJobs become trainer pods with live status, typed failures, retries and
restart safety. Run it with `kopf run -m kubetune_operator` or `kubetune-operator`.

Importing the package registers the kopf handlers (that is how `kopf run -m` finds them); the pure parts
(builders, observe, plan, conditions) can be imported and tested without a cluster.
"""

from . import handlers  # noqa: F401  (registers the kopf handlers)
