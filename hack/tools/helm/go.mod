// Builds helm from the published helm.sh/helm/v3 module.
module certsync.io/hack/tools/helm

go 1.26.0

require helm.sh/helm/v3 v3.22.0 // indirect
