package main

import (
	"bufio"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"
)

// A process that burned CPU before a window and exits inside it adds nothing
// to the window, although its whole life's CPU lands in its parent's reaped
// time (the app group's backends of a finished pgbench run, still exiting
// when the steady run's window opened, were once counted in full).
func TestCPUSinceLeavesOutWhatExitingChildrenUsedBefore(t *testing.T) {
	// The outer shell waits for a subshell that burns CPU, says so, and
	// exits once its input closes; the shell then waits for fd 3 to close.
	cmd := exec.Command("sh", "-c",
		`( i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo burned; read x ); read y <&3`)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	hold, release, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{hold}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	hold.Close()
	t.Cleanup(func() { release.Close(); in.Close(); _ = cmd.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	root := cmd.Process.Pid
	start := snapshotCPU(root)
	kids := children(root)
	if len(kids) != 1 {
		t.Fatalf("the shell has children %v, want the subshell alone", kids)
	}
	burned := start[kids[0]]
	if burned < 0.1 {
		t.Fatalf("the subshell used %.2f s of CPU before the window, too little to tell", burned)
	}

	in.Close()
	deadline := time.Now().Add(10 * time.Second)
	for slices.Contains(children(root), kids[0]) {
		if time.Now().After(deadline) {
			t.Fatal("the subshell did not exit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, reaped := cpuTimes(root); reaped < burned {
		t.Fatalf("the shell's reaped time is %.2f s, below the %.2f s its child used: the test shows nothing", reaped, burned)
	}
	if got := start.since(root); got > burned/2 {
		t.Fatalf("CPU since the window opened = %.2f s; the subshell used %.2f s before it and next to nothing after", got, burned)
	}
}
