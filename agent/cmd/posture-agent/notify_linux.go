package main

import "github.com/posture-project/posture/agent/notify"

func notifyBus(addr, title, body string) error { return notify.NotifyBus(addr, title, body) }
