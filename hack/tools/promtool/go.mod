// Builds promtool from the published github.com/prometheus/prometheus module.
module certsync.io/hack/tools/promtool

go 1.26.7

require github.com/prometheus/prometheus v0.316.0 // indirect
