package miniotest

import "syscall"

// Kill stops the server with SIGKILL, without waiting for it to finish
// anything, as a crash would, and waits for it to exit. Restart starts it
// again with the same data. It is safe to call when the server is not
// running.
func (s *Server) Kill() {
	cmd, exited := s.detach()
	if cmd == nil {
		return
	}
	// The server leads its own process group (sysProcAttr).
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-exited
}
