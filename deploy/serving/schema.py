"""A written ``config.pbtxt`` parsed into Triton's own ``ModelConfig`` message.

The message definitions are the ones ``tritonclient`` ships (``tritonclient.grpc.model_config_pb2``,
generated from Triton's ``model_config.proto``); protobuf's text parser refuses any field the
message does not have, so a config that parses here has no unknown or misspelled field. Where
``tritonclient`` is not installed (its pins clash with the main environment: docs/serving.md) the
check is reported as not run; the tests run it in the Triton environment.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, text_format

from deploy.core.errors import BackendUnavailableError, BadInputError, first_line


def _model_config_pb2() -> Any:
    try:
        from tritonclient.grpc import model_config_pb2  # noqa: PLC0415 - optional: tritonclient pins protobuf<7 and numpy
    except ImportError as exc:
        raise BackendUnavailableError(f"Triton's ModelConfig schema needs tritonclient[grpc] ({exc}): "
                                      "pip install 'tritonclient[grpc]' in a separate environment") from None
    return model_config_pb2


def schema_available() -> bool:
    """Whether ``parse_config`` can run here."""
    try:
        _model_config_pb2()
    except BackendUnavailableError:
        return False
    return True


def parse_config(text: str) -> dict[str, Any]:
    """``text`` parsed into ``ModelConfig`` (BadInputError on any unknown field or bad value), returned
    as a dict with the proto's field names (int64 fields as strings, as protobuf's JSON mapping has them)."""
    message = _model_config_pb2().ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise BadInputError(f"config.pbtxt does not parse as Triton's ModelConfig: {first_line(exc, 300)}") from None
    return json_format.MessageToDict(message, preserving_proto_field_name=True)
