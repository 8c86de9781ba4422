-- Argo CD health of a ModelFeedbackLoop (feedbackloop.dev/v1alpha1), from the conditions the operator writes.
-- Install: the argocd-cm key resource.customizations.health.feedbackloop.dev_ModelFeedbackLoop holds this file
-- (docs/install.md, "Argo CD"). Lua 5.1, as Argo CD's gopher-lua; tests/release/test_argocd_health.py runs it
-- against the status the operator writes in every phase.
--
--   no status yet, or the spec's generation not seen yet     Progressing
--   Stalled=True (Invalid spec, storage keys refused)        Degraded      the condition's message
--   spec.paused                                             Suspended
--   Reconciling=True (Retraining, Canary, rolling out)       Progressing   what it works on
--   Ready=True (Monitoring)                                  Healthy
--   Pending: no version yet, the first training under way    Progressing
--   Pending after a failed first training (lastFailure)      Degraded
--   Ready=False otherwise (Breached, serving not ready)      Degraded      Ready's message
local hs = {}

local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function answer(status, message)
  hs.status = status
  hs.message = message
  return hs
end

local ready = condition("Ready")
if ready == nil then
  return answer("Progressing", "waiting for the operator")
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  return answer("Degraded", stalled.message)
end
if obj.spec ~= nil and obj.spec.paused then
  return answer("Suspended", "paused")
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
  return answer("Progressing", "the operator has not seen generation " .. tostring(generation) .. " yet")
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  return answer("Progressing", reconciling.message)
end
if ready.status == "True" then
  return answer("Healthy", ready.message)
end
if obj.status.phase == "Pending" and obj.status.lastFailure == nil then
  return answer("Progressing", ready.message)
end
return answer("Degraded", ready.message)
