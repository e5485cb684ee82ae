// Package proctree finds a process's children in /proc (Linux) and signals a process with its children: how a
// PostgreSQL instance (a postmaster and the processes it started) is frozen, resumed or killed as a whole.
package proctree

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Children returns the processes whose parent is pid, with their command lines (NULs as spaces).
func Children(pid int) map[int]string {
	out := map[int]string{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", child))
		if err != nil {
			continue
		}
		s := string(raw)
		i := strings.LastIndexByte(s, ')') // the command name, in parentheses, may hold spaces
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == pid {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", child))
			out[child] = strings.ReplaceAll(string(cmdline), "\x00", " ")
		}
	}
	return out
}

// Signal sends sig to pid and to every process it started, and returns the pids it signalled.
func Signal(pid int, sig syscall.Signal) []int {
	pids := []int{pid}
	for child := range Children(pid) {
		pids = append(pids, child)
	}
	for _, p := range pids {
		_ = syscall.Kill(p, sig)
	}
	return pids
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(raw)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z'
	}
	return true
}
