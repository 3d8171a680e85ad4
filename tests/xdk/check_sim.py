"""X's official Python SDK (xdk) against the simulator: every response the
SDK can request from it must parse into the SDK's own models (pydantic
validates each one), so the simulator answers as X's published schema does.

Run by tests/e2e/sim.rs with SIM_URL, SIM_BEARER, WEBHOOK_ID, USER_ID,
REPLAY_FROM and REPLAY_TO (yyyymmddhhmm) set; prints one JSON line per call
and exits non-zero on the first that does not parse.
"""

import json
import os
import sys

import xdk
import xdk.activity.models as activity
import xdk.webhooks.models as webhooks

client = xdk.Client(base_url=os.environ["SIM_URL"], bearer_token=os.environ["SIM_BEARER"])
webhook_id = os.environ["WEBHOOK_ID"]
user_id = os.environ["USER_ID"]


def checked(name, call):
    try:
        response = call()
        if hasattr(response, "__iter__") and not hasattr(response, "model_dump"):
            response = list(response)
            dumped = [page.model_dump(mode="json") for page in response]
        else:
            dumped = response.model_dump(mode="json")
    except Exception as error:  # the SDK's own validation or HTTP error
        print(json.dumps({"call": name, "parsed": False, "error": repr(error)}))
        sys.exit(1)
    print(json.dumps({"call": name, "parsed": True}))
    return dumped


checked("webhooks.get", lambda: client.webhooks.get())
checked("webhooks.validate", lambda: client.webhooks.validate(webhook_id))
checked(
    "webhooks.create_webhook_replay_job",
    lambda: client.webhooks.create_webhook_replay_job(
        webhooks.CreateWebhookReplayJobRequest(
            webhook_id=webhook_id,
            from_date=os.environ["REPLAY_FROM"],
            to_date=os.environ["REPLAY_TO"],
        )
    ),
)
created = checked(
    "activity.create_subscription",
    lambda: client.activity.create_subscription(
        activity.CreateSubscriptionRequest(
            event_type="post.create",
            filter={"user_id": user_id},
            tag="xdk-check",
            webhook_id=webhook_id,
        )
    ),
)
second = checked(
    "activity.create_subscription (like.create)",
    lambda: client.activity.create_subscription(
        activity.CreateSubscriptionRequest(
            event_type="like.create", filter={"user_id": user_id}, webhook_id=webhook_id
        )
    ),
)
pages = checked("activity.get_subscriptions", lambda: client.activity.get_subscriptions(max_results=1))
ids = [s["subscription_id"] for page in pages for s in (page.get("data") or [])]
if len(ids) < 2:
    print(json.dumps({"call": "activity.get_subscriptions", "parsed": False, "error": f"pages held {ids}"}))
    sys.exit(1)
checked(
    "activity.update_subscription",
    lambda: client.activity.update_subscription(ids[0], activity.UpdateSubscriptionRequest(tag="renamed")),
)
checked("activity.delete_subscription", lambda: client.activity.delete_subscription(ids[0]))
checked("activity.delete_subscriptions_by_ids", lambda: client.activity.delete_subscriptions_by_ids(ids[1:]))
checked("account_activity.get_subscription_count", lambda: client.account_activity.get_subscription_count())
checked("account_activity.get_subscriptions", lambda: client.account_activity.get_subscriptions(webhook_id))
