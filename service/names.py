"""The names and values a client gives in a request body, each checked by one rule
(the request models use these types; the rules are the library's own where it has
one: a feature set's name is the store's rule, a layer choice the heads')."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StringConstraints

from featurestore.errors import StoreError
from featurestore.store.layout import SET_NAME, check_set_name
from models.errors import SettingsError
from service.config import HEAD_NAME, STORE_NAME, TRAINED_NAME


def _rule(check):
    """A pydantic validator from a library check (its error's words as the reason)."""

    def checked(value: str) -> str:
        try:
            check(value)
        except (StoreError, SettingsError, ValueError) as err:
            raise ValueError(str(err)) from None
        return value

    return AfterValidator(checked)


StoreName = Annotated[str, StringConstraints(pattern=STORE_NAME)]
HeadName = Annotated[str, StringConstraints(pattern=HEAD_NAME)]
TrainedName = Annotated[str, StringConstraints(pattern=TRAINED_NAME)]
Source = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
FeatureSetName = Annotated[str, StringConstraints(pattern=SET_NAME), _rule(check_set_name)]
# the layers an extraction stores (checked against the backbone's when it runs)
StoredLayers = Annotated[
    str, StringConstraints(pattern=r"^(last|all|[0-9]+(,[0-9]+)*)$", max_length=256)
]
# the layer a head reads: a layer number, "last" or "weighted" (models.options' rule)
LayerChoice = Annotated[str, StringConstraints(pattern=r"^(last|weighted|[0-9]+)$", max_length=16)]
