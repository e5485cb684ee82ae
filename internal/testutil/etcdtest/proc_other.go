//go:build !linux

package etcdtest

import "syscall"

// sysProcAttr: only Linux has a parent-death signal; elsewhere the test's cleanup kills etcd.
func sysProcAttr() *syscall.SysProcAttr { return nil }
