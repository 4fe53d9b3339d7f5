-- Argo CD health check for kubetune.io/FineTuneSchedule.
-- Install: argocd-cm, key resource.customizations.health.kubetune.io_FineTuneSchedule (see docs/gitops.md).
-- Healthy while it schedules (the message says what the last scheduled time did and the latest passing
-- adapter), Degraded when its spec is invalid or the last time could not read the data, Suspended when
-- suspended, Progressing until the operator has seen the current spec.
local hs = { status = "Progressing", message = "Waiting for the operator to observe this schedule" }
local status = obj.status
local generation = obj.metadata and obj.metadata.generation

if status == nil or (generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation) then
  return hs
end

if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Validated" and c.status == "False" then
      hs.status = "Degraded"
      hs.message = (c.reason or "InvalidSpec") .. ": " .. (c.message or "")
      return hs
    end
  end
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "Suspended (spec.suspend is true)"
  return hs
end

if status.lastOutcome == "DataCheckFailed" then
  hs.status = "Degraded"
  hs.message = status.message or "the last scheduled time could not read the data"
  return hs
end

hs.status = "Healthy"
local parts = {}
if status.lastOutcome ~= nil then
  table.insert(parts, "last: " .. status.lastOutcome .. " at " .. (status.lastScheduleTime or "?"))
end
if status.latestAdapter ~= nil then
  table.insert(parts, "latest passing adapter " .. status.latestAdapter)
end
if status.nextScheduleTime ~= nil then
  table.insert(parts, "next at " .. status.nextScheduleTime)
end
hs.message = #parts > 0 and table.concat(parts, "; ") or "Waiting for the first scheduled time"
return hs
