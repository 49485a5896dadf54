-- Argo CD health of the certsync.io kinds (DeploymentTLS, CdnCertificate, LetsEncryptOrder), read from their
-- kstatus conditions: Healthy when Ready=True for the current generation, Progressing while Reconciling (or
-- before the operator has seen the current generation), Degraded when Stalled, Suspended when spec.suspend.
local hs = {status = "Progressing", message = "Waiting for certsync to reconcile this resource"}
local status = obj.status
if status == nil or status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local conditions = {}
for _, condition in ipairs(status.conditions) do
  conditions[condition.type] = condition
end

-- A condition written for an older generation says nothing about the spec that was just applied.
local function current(condition)
  if condition == nil then
    return false
  end
  local seen = condition.observedGeneration or status.observedGeneration
  return generation == nil or seen == generation
end

local function describe(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

local ready, reconciling, stalled = conditions["Ready"], conditions["Reconciling"], conditions["Stalled"]
if current(stalled) and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
elseif current(ready) and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
elseif current(ready) and ready.reason == "Suspended" then
  hs.status = "Suspended"
  hs.message = describe(ready)
elseif current(reconciling) and reconciling.status == "True" then
  hs.message = describe(reconciling)
elseif current(ready) and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready)
elseif generation ~= nil then
  hs.message = "Waiting for certsync to reconcile generation " .. tostring(generation)
end
return hs
