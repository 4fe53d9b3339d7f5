"""The FineTuneSchedule API: its CRD documents every field and prints what a user checks first; a bad cron
expression, time zone or name is refused with the field and what is accepted."""

from __future__ import annotations

import copy

import pytest

from kubetune_api import SpecError, parse_schedule
from kubetune_api.crd import all_crds

from .test_crd import _walk

CRD = all_crds()["kubetune.io_finetuneschedules.yaml"]
VALID = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSchedule", "metadata": {"name": "nightly"},
         "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {
             "model": {"uri": "hf://org/model"}, "dataset": {"train": {"uri": "s3://data/train/"}},
             "output": {"uri": "s3://out/"}}}}}


@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_schedule_field_has_a_description(part):
    schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][part]
    missing = [p for p, node in _walk(schema, part) if p != part and not node.get("description")
               and not p.endswith(("[]", "{}"))]
    assert not missing, f"fields without description: {missing}"


def test_print_columns_status_subresource_and_defaults():
    version = CRD["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Schedule", "Suspend", "Active", "Last Schedule", "Outcome", "Last Passing", "Adapter", "Age"]
    spec = parse_schedule(VALID).spec
    assert (spec.time_zone, spec.concurrency_policy, spec.successful_jobs_history_limit,
            spec.failed_jobs_history_limit, spec.suspend) == ("UTC", "Forbid", 3, 1, False)


@pytest.mark.parametrize("path,value,expected", [
    (("spec", "schedule"), "0 25 * * *", "spec.schedule: '0 25 * * *' is not a cron expression of 5 fields"),
    (("spec", "timeZone"), "Mars/Olympus", "spec.timeZone: 'Mars/Olympus' is not an IANA time zone name"),
    (("spec", "concurrencyPolicy"), "Queue", "spec.concurrencyPolicy: Input should be 'Allow', 'Forbid' or 'Replace'"),
    (("metadata", "name"), "a" * 42, "metadata.name: String should have at most 41 characters"),
    (("spec", "jobTemplate", "spec", "output"), {"uri": "hf://x/y"}, "spec.jobTemplate.spec.output.uri"),
])
def test_invalid_schedules_name_the_field(path, value, expected):
    doc = copy.deepcopy(VALID)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SpecError) as err:
        parse_schedule(doc)
    assert any(line.startswith(expected) for line in err.value.errors), err.value.errors
