"""Shared pydantic base for every API object: camelCase field names, no unknown fields."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """Base of every FineTuneJob API type.

    Fields are snake_case in Python and camelCase on the wire (Kubernetes convention). Unknown fields are
    rejected so a typo such as `learningrate` is an error that names the field, not a silently ignored key.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=False,
        use_attribute_docstrings=False,
    )

    def to_wire(self) -> dict:
        """The object as a manifest would carry it: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
