package pki

import (
	"fmt"
	"net/netip"
	"strings"
)

// request is a validated Host: its name, and its addresses split into IP and DNS SANs (the name is among dns).
type request struct {
	name string
	ips  []netip.Addr
	dns  []string
}

// newRequest validates a host as hostile input: the name becomes a file name in the output directory.
func newRequest(h Host) (request, error) {
	if err := checkName(h.Name); err != nil {
		return request{}, err
	}
	r := request{name: h.Name, dns: []string{strings.ToLower(h.Name)}}
	for _, a := range h.Addrs {
		if ip, err := netip.ParseAddr(a); err == nil {
			if ip.Zone() != "" {
				return request{}, fmt.Errorf("host %s: address %q has a zone, which a certificate cannot name", h.Name, a)
			}
			r.ips = appendIP(r.ips, ip.Unmap())
			continue
		}
		if err := checkDNSName(a); err != nil {
			return request{}, fmt.Errorf("host %s: address %q is neither an IP address nor a DNS name: %v", h.Name, a, err)
		}
		r.dns = appendDNS(r.dns, strings.ToLower(a))
	}
	return r, nil
}

// checkName accepts 1 to 63 letters, digits, '-', '_' and '.', starting with a letter or digit: never a path
// separator or "..". "ca" and names ending in "-key" are refused because their files would collide with the
// CA's or another host's key.
func checkName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("host name %q: must be 1 to 63 characters", name)
	}
	for _, c := range name {
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return fmt.Errorf("host name %q: only letters, digits, '-', '_' and '.' are allowed", name)
		}
	}
	if !isAlnum(rune(name[0])) {
		return fmt.Errorf("host name %q: must start with a letter or digit", name)
	}
	if strings.Contains(name, "..") {
		return fmt.Errorf("host name %q: must not contain \"..\"", name)
	}
	lower := strings.ToLower(name)
	if lower == "ca" || strings.HasSuffix(lower, "-key") {
		return fmt.Errorf("host name %q: reserved (its files would collide with the CA's or a key file)", name)
	}
	return nil
}

// checkDNSName accepts a DNS name: dot-separated labels of letters, digits, '-' and '_', at most 253 characters.
func checkDNSName(s string) error {
	if s == "" || len(s) > 253 {
		return fmt.Errorf("must be 1 to 253 characters")
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("label %q must be 1 to 63 characters", label)
		}
		for _, c := range label {
			if !isAlnum(c) && c != '-' && c != '_' {
				return fmt.Errorf("label %q: only letters, digits, '-' and '_' are allowed", label)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q must not start or end with '-'", label)
		}
	}
	return nil
}

func isAlnum(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func appendIP(ips []netip.Addr, ip netip.Addr) []netip.Addr {
	for _, x := range ips {
		if x == ip {
			return ips
		}
	}
	return append(ips, ip)
}

func appendDNS(names []string, name string) []string {
	for _, x := range names {
		if x == name {
			return names
		}
	}
	return append(names, name)
}
