# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The API's shapes: ``params`` (path, query and header parameters), ``bodies`` (what a
client sends) and ``views`` (what it gets back: every route's ``response_model``)."""
