// Command cadvisor is podguard's local build of cAdvisor for the real-node harness
// (deploy/local/cadvisor.py): the library module github.com/google/cadvisor/lib (the
// command module is not served by the Go module proxy), its manager over the raw cgroup
// factory only, and its Prometheus collector on /metrics, bound to one address.
//
// Only cgroups whose path starts with one of -raw_cgroup_prefix_whitelist are reported
// (besides "/"); an empty allow-list reports every cgroup on the machine, so the harness
// always passes its own parent cgroup.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/google/cadvisor/lib/cache/memory"
	"github.com/google/cadvisor/lib/container"
	"github.com/google/cadvisor/lib/manager"
	"github.com/google/cadvisor/lib/metrics"
	info "github.com/google/cadvisor/lib/model"
	"github.com/google/cadvisor/lib/utils/sysfs"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/utils/clock"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve /metrics on (host:port)")
	prefixes := flag.String("raw_cgroup_prefix_whitelist", "",
		"comma-separated cgroup path prefixes to report (required)")
	portFile := flag.String("port_file", "", "write the bound port here once serving")
	storage := flag.Duration("storage_duration", 2*time.Minute, "how long stats are kept in memory")
	flag.Parse()

	allow := []string{}
	for _, p := range strings.Split(*prefixes, ",") {
		if p = strings.TrimSpace(p); p != "" {
			allow = append(allow, p)
		}
	}
	if len(allow) == 0 {
		fmt.Fprintln(os.Stderr, "cadvisor: -raw_cgroup_prefix_whitelist is required "+
			"(an empty allow-list would report every cgroup of the machine)")
		os.Exit(2)
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil || (host != "127.0.0.1" && host != "::1" && host != "localhost") {
		fmt.Fprintf(os.Stderr, "cadvisor: -listen %q must be a loopback host:port\n", *listen)
		os.Exit(2)
	}

	included := container.MetricSet{
		container.CpuUsageMetrics:    struct{}{},
		container.MemoryUsageMetrics: struct{}{},
		container.OOMMetrics:         struct{}{},
		container.ProcessMetrics:     struct{}{},
	}
	interval := 1 * time.Second
	dynamic := false
	hk := manager.HousekeepingConfig{Interval: &interval, AllowDynamic: &dynamic}
	m, err := manager.New(memory.New(*storage, nil), sysfs.NewRealSysFs(), hk, included,
		allow, nil, "", 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cadvisor: creating the manager: %v\n", err)
		os.Exit(1)
	}
	if err := m.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "cadvisor: starting the manager: %v\n", err)
		os.Exit(1)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics.NewPrometheusCollector(m, metrics.DefaultContainerLabels, included,
		clock.RealClock{}, info.RequestOptions{IdType: info.TypeName, Count: 1, Recursive: true}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cadvisor: listen %s: %v\n", *listen, err)
		os.Exit(1)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if *portFile != "" {
		tmp := *portFile + ".tmp"
		if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%d\n", port)), 0o644); err == nil {
			_ = os.Rename(tmp, *portFile)
		}
	}
	fmt.Fprintf(os.Stderr, "cadvisor: serving http://%s/metrics for %v\n", ln.Addr(), allow)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	<-stop
	_ = srv.Close()
	_ = m.Stop()
}
