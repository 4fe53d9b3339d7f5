-- Argo CD health check for kubetune.io/FineTuneJob.
-- Install: argocd-cm, key resource.customizations.health.kubetune.io_FineTuneJob (see docs/gitops.md).
-- Progressing while pending or training (and while a changed spec awaits the operator), Healthy on
-- Succeeded, Degraded on Failed, Suspended when suspended. Conditions are the truth; phase is a fallback.
local hs = { status = "Progressing", message = "Waiting for the operator to observe this job" }

local function condition(ctype)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == ctype then
      return c
    end
  end
  return nil
end

local function is_true(ctype)
  local c = condition(ctype)
  return c ~= nil and c.status == "True"
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.reason or fallback
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

if obj.status == nil then
  if obj.spec ~= nil and obj.spec.suspend == true then
    hs.status = "Suspended"
    hs.message = "Suspended (spec.suspend is true)"
  end
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "Spec changed (generation " .. generation .. "); waiting for the operator to start the new run"
  return hs
end

local phase = obj.status.phase
if is_true("Failed") or (condition("Failed") == nil and phase == "Failed") then
  hs.status = "Degraded"
  hs.message = describe(condition("Failed"), "Failed")
  return hs
end

if is_true("Succeeded") or (condition("Succeeded") == nil and phase == "Succeeded") then
  hs.status = "Healthy"
  local gate = condition("EvaluationPassed")
  hs.message = "Succeeded"
  if obj.status.evalSummary ~= nil then
    hs.message = hs.message .. " (" .. obj.status.evalSummary .. ")"
  end
  if gate ~= nil then
    hs.message = hs.message .. "; EvaluationPassed=" .. gate.status .. " (" .. (gate.reason or "") .. ")"
  end
  return hs
end

if is_true("Suspended") or phase == "Suspended" or (obj.spec ~= nil and obj.spec.suspend == true) then
  hs.status = "Suspended"
  hs.message = describe(condition("Suspended"), "Suspended")
  return hs
end

local progress = obj.status.progress
if is_true("Running") then
  hs.message = "Training"
  if progress ~= nil and progress.percent ~= nil then
    hs.message = hs.message .. " " .. progress.percent .. "%"
    if progress.step ~= nil and progress.totalSteps ~= nil then
      hs.message = hs.message .. " (step " .. progress.step .. "/" .. progress.totalSteps .. ")"
    end
  end
  return hs
end

local running = condition("Running")
if running ~= nil and running.status == "Unknown" then
  -- the node stopped reporting (NodeNotReady): the job may still be training; the message says which node
  hs.message = describe(running, "Unknown")
  return hs
end

hs.message = describe(condition("Scheduled") or condition("Validated"), "Pending")
return hs
