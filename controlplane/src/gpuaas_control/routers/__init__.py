# Copyright (c) gpuaas.slice contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One APIRouter per resource; ``gpuaas_control.api.create_app`` includes them all."""

from gpuaas_control.routers import allocations, audit, nodes, service, slots, tenants, tokens, usage

ROUTERS = (service.router, allocations.router, nodes.router, slots.router, tenants.router,
           usage.router, tokens.router, audit.router)
