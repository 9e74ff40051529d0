//go:build tools

// Package tools pins the command this module builds: etcd's main package sits at the
// root of its server module.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
