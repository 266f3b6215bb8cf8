# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The refusals the control plane's operations raise; the API answers each with its
``status`` and a JSON body ``{"detail": ..., "problems": [...]}``."""

from __future__ import annotations


class ControlError(Exception):
    """A refusal the client can act on; ``status`` is its HTTP status."""

    status = 400

    def __init__(self, message, problems=None):
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class NotFound(ControlError):
    status = 404


class Forbidden(ControlError):
    status = 403


class Conflict(ControlError):
    status = 409


class Invalid(ControlError):
    status = 422
