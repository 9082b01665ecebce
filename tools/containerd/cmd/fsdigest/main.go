// fsdigest prints a digest of a whole file tree: every entry's path, type, permission bits (suid, sgid and
// sticky included), owner, size and content (sha256), symlink target, device numbers, hardlink group and
// extended attributes. Mtimes and the root directory's own attributes are left out: a container's root is its
// writable snapshot, and runtimes create mount points. tests/test_containerd.py puts this static binary into
// an image, runs it in a container, and computes the same digest in Python over the source rootfs.
//
// Usage: fsdigest [--list] [--skip NAME]... [ROOT]
// Prints "fsdigest ready" first (before reading anything), then with --list one line per entry, then
// "entries N" and "sha256 HEX".
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"unsafe"
)

type skipList []string

func (s *skipList) String() string     { return strings.Join(*s, ",") }
func (s *skipList) Set(v string) error { *s = append(*s, v); return nil }

func lsyscall(trap uintptr, path string, name string, buf []byte) (int, error) {
	p, err := syscall.BytePtrFromString(path)
	if err != nil {
		return 0, err
	}
	var n *byte
	if name != "" {
		if n, err = syscall.BytePtrFromString(name); err != nil {
			return 0, err
		}
	}
	var b unsafe.Pointer
	if len(buf) > 0 {
		b = unsafe.Pointer(&buf[0])
	}
	var r uintptr
	var errno syscall.Errno
	if name == "" { // llistxattr(path, list, size)
		r, _, errno = syscall.Syscall(trap, uintptr(unsafe.Pointer(p)), uintptr(b), uintptr(len(buf)))
	} else { // lgetxattr(path, name, value, size)
		r, _, errno = syscall.Syscall6(trap, uintptr(unsafe.Pointer(p)), uintptr(unsafe.Pointer(n)), uintptr(b),
			uintptr(len(buf)), 0, 0)
	}
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// call sizes the buffer first, then reads, as the xattr calls want.
func call(trap uintptr, path, name string) ([]byte, error) {
	for {
		size, err := lsyscall(trap, path, name, nil)
		if err != nil {
			return nil, err
		}
		buf := make([]byte, size)
		got, err := lsyscall(trap, path, name, buf)
		if err == syscall.ERANGE {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:got], nil
	}
}

func xattrs(path string) (string, error) {
	list, err := call(syscall.SYS_LLISTXATTR, path, "")
	if err == syscall.ENOTSUP {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	var names []string
	for _, n := range strings.Split(string(list), "\x00") {
		if n != "" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		v, err := call(syscall.SYS_LGETXATTR, path, n)
		if err != nil {
			return "", fmt.Errorf("%s: %s: %w", path, n, err)
		}
		parts = append(parts, esc(n)+"="+hex.EncodeToString(v))
	}
	return strings.Join(parts, ","), nil
}

func main() {
	var skip skipList
	list := false
	root := "/"
	args := os.Args[1:]
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--list":
			list = true
		case "--skip":
			i++
			skip.Set(args[i])
		default:
			root = args[i]
		}
	}
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "fsdigest ready")
	out.Flush()
	digest := sha256.New()
	groups := map[[2]uint64]string{}
	count := 0
	var walk func(rel string) error
	walk = func(rel string) error {
		dir := filepath.Join(root, rel)
		f, err := os.Open(dir)
		if err != nil {
			return err
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return err
		}
		sort.Strings(names) // bytewise
		for _, name := range names {
			if rel == "" && contains(skip, name) {
				continue
			}
			path := name
			if rel != "" {
				path = rel + "/" + name
			}
			full := filepath.Join(root, path)
			var st syscall.Stat_t
			if err := syscall.Lstat(full, &st); err != nil {
				return err
			}
			perm := st.Mode & 07777
			var kind, extra string
			switch st.Mode & syscall.S_IFMT {
			case syscall.S_IFDIR:
				kind = "dir"
			case syscall.S_IFREG:
				kind = "reg"
				sum, err := fileSHA(full)
				if err != nil {
					return err
				}
				extra = fmt.Sprintf("%d %s", st.Size, sum)
			case syscall.S_IFLNK:
				kind = "lnk"
				target, err := os.Readlink(full)
				if err != nil {
					return err
				}
				extra = esc(target)
			case syscall.S_IFCHR, syscall.S_IFBLK:
				kind = map[bool]string{true: "chr", false: "blk"}[st.Mode&syscall.S_IFMT == syscall.S_IFCHR]
				extra = fmt.Sprintf("%d:%d", (st.Rdev>>8)&0xfff|(st.Rdev>>32)&^0xfff, st.Rdev&0xff|(st.Rdev>>12)&^0xff)
			case syscall.S_IFIFO:
				kind = "fifo"
			case syscall.S_IFSOCK:
				kind = "sock"
			}
			if kind != "dir" && st.Nlink > 1 {
				key := [2]uint64{st.Dev, st.Ino}
				if _, seen := groups[key]; !seen {
					groups[key] = path
				}
				extra += " link=" + esc(groups[key])
			}
			xa, err := xattrs(full)
			if err != nil {
				return err
			}
			line := fmt.Sprintf("%s %s %04o %d:%d %s %s\n", esc(path), kind, perm, st.Uid, st.Gid, extra, xa)
			digest.Write([]byte(line))
			count++
			if list {
				out.WriteString(line)
			}
			if kind == "dir" {
				if err := walk(path); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(""); err != nil {
		out.Flush()
		fmt.Fprintf(os.Stderr, "fsdigest: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(out, "entries %d\nsha256 %s\n", count, hex.EncodeToString(digest.Sum(nil)))
	out.Flush()
}

// esc writes bytes outside '!'..'~', and the backslash, as \xHH.
func esc(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '!' || c > '~' || c == '\\' {
			fmt.Fprintf(&b, "\\x%02x", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func fileSHA(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
