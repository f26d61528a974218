"""Capture the XML that the local libvirt + QEMU really print, as unit-test fixtures.

Run as root on the test machine with the system Python and python3-libvirt
(``apt-get install python3-libvirt``); libvirtd must be running
(``scripts/start-daemons.sh`` or ``make daemons``)::

    /usr/bin/python3 scripts/capture_fixtures.py [--uri qemu:///system]
                                                  [--out tests/unit/fixtures/real]
                                                  [--virt-types kvm,qemu] [--cases REGEX]

It (re)writes, under ``--out``:

* ``capabilities.xml``              conn.getCapabilities()
* ``domcapabilities-<vt>.xml``      conn.getDomainCapabilities(None, 'x86_64', None, vt, 0)
* ``versions.json``                 libvirt / QEMU / package versions, host CPU, date, the
                                     feature names the cases use and whether each virt type's
                                     host-model has them
* ``qemucaps-cpu-<vt>.xml``        the CPU parts of libvirt's QEMU capabilities cache
                                     (per-model blockers, host CPU properties), see
                                     Capture.qemucaps_cpu
* ``cpu-models.json``               conn.getCPUModelNames('x86_64') and, per virt type, the
                                     usable / unusable models of domcapabilities
* ``baseline-*.xml``                conn.baselineHypervisorCPU() over the host-model CPU
                                     (and over a few named models), see BASELINES below;
                                     ``baseline-*.error.txt`` when libvirt refused
* ``define/<vt>-<case>.*``          one guest per (virt type, case):
    ``.given.xml``        the <cpu> element put into the domain
    ``.domain.xml``       the whole domain XML given (only for the case 'hm', for reference)
    ``.inactive.xml``     <cpu> of XMLDesc(INACTIVE) after defineXML
    ``.update-cpu.xml``   <cpu> of XMLDesc(INACTIVE | UPDATE_CPU) (or ``.update-cpu.error.txt``)
    ``.live.xml``         <cpu> of XMLDesc(0) after createWithFlags(START_PAUSED)
    ``.qemu-cpu.txt``     the ``-cpu`` argument libvirt gave QEMU (from the domain's log)
    ``.error.txt``        libvirt's exact error message when defineXML or the start failed
                          (which of the two is in outcomes.json)
* ``outcomes.json``                 per virt type and case: defined / started / error stage
                                     and message, so tests can iterate over the cases

Every <cpu> element is cut out of libvirt's text verbatim; only the indentation of the
enclosing <domain> (two spaces) is removed from each line.

Guests are named ``hostcpu-capture-<random>-<vt>-<case>``, defined, started paused (never
running a guest instruction), destroyed and undefined; they are removed even when the script
fails or is interrupted.  Nothing else on the host is touched (the per-guest QEMU log file
that libvirt leaves behind is deleted too).
"""

import argparse
import datetime
import json
import os
import platform
import re
import secrets
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET

import libvirt

ARCH = 'x86_64'
VIRT_TYPES = ('kvm', 'qemu')

# Feature names the cases use.  Their presence in each virt type's host-model expansion is
# written to versions.json ("features_used"), so the README can say which are "has"/"lacks".
HAS = 'clwb'           # in both host-models here (kvm: listed extra; qemu: listed extra)
HAS2 = 'umip'          # in both host-models here
LACKS = 'avx512-fp16'  # in neither (Zen 4 has no FP16; TCG neither)
HOST_NOT_KVM = 'avx2'  # in the host CPU (capabilities) but not in the kvm host-model here
NOARCH = "<feature policy='disable' name='arch-capabilities'/>"
# the IA32_ARCH_CAPABILITIES (MSR 0x10a) bits the kvm host-model asks for here
MSR_OFF = ("<feature policy='disable' name='rdctl-no'/>"
           "<feature policy='disable' name='skip-l1dfl-vmentry'/>"
           "<feature policy='disable' name='mds-no'/>"
           "<feature policy='disable' name='pschange-mc-no'/>")

# Named models tried in custom mode (each with the variants of CUSTOM_VARIANTS).
CUSTOM_MODELS = ('qemu64', 'kvm64', 'EPYC', 'EPYC-Rome', 'Haswell-noTSX', 'Opteron_G3',
                 'Westmere', 'pentium3', '486')


def custom_variants(model):
    m = model
    return [
        ('', "<cpu><model>%s</model></cpu>" % m),
        ('-minimum', "<cpu match='minimum'><model>%s</model></cpu>" % m),
        ('-forbid', "<cpu><model fallback='forbid'>%s</model></cpu>" % m),
        ('-optional-has', "<cpu><model>%s</model><feature policy='optional' name='%s'/></cpu>"
         % (m, HAS)),
        ('-optional-lacks', "<cpu><model>%s</model><feature policy='optional' name='%s'/></cpu>"
         % (m, LACKS)),
        ('-require-lacks', "<cpu><model>%s</model><feature policy='require' name='%s'/></cpu>"
         % (m, LACKS)),
    ]


def build_cases(domcaps_root):
    """Return [(case, cpu_xml or None)] for one virt type; None = no <cpu> element at all."""
    cases = [
        ('no-cpu', None),
        # host-passthrough
        ('hp', "<cpu mode='host-passthrough'/>"),
        ('hp-noarch', "<cpu mode='host-passthrough'>%s</cpu>" % NOARCH),
        ('hp-migratable-off', "<cpu mode='host-passthrough' migratable='off'/>"),
        ('hp-noarch-migratable-off',
         "<cpu mode='host-passthrough' migratable='off'>%s</cpu>" % NOARCH),
        ('hp-noarch-check-full', "<cpu mode='host-passthrough' check='full'>%s</cpu>" % NOARCH),
        ('hp-noarch-check-partial',
         "<cpu mode='host-passthrough' check='partial'>%s</cpu>" % NOARCH),
        ('hp-noarch-cache-passthrough',
         "<cpu mode='host-passthrough'><cache mode='passthrough'/>%s</cpu>" % NOARCH),
        ('hp-noarch-maxphys-passthrough',
         "<cpu mode='host-passthrough'><maxphysaddr mode='passthrough'/>%s</cpu>" % NOARCH),
        ('hp-noarch-maxphys-passthrough-bits',
         "<cpu mode='host-passthrough'><maxphysaddr mode='passthrough' bits='42'/>%s</cpu>"
         % NOARCH),
        ('hp-noarch-maxphys-emulate',
         "<cpu mode='host-passthrough'><maxphysaddr mode='emulate' bits='42'/>%s</cpu>"
         % NOARCH),
        ('hp-noarch-model', "<cpu mode='host-passthrough'><model>EPYC</model>%s</cpu>"
         % NOARCH),
        ('hp-noarch-require-lacks',
         "<cpu mode='host-passthrough'>%s<feature policy='require' name='%s'/></cpu>"
         % (NOARCH, LACKS)),
        ('hp-noarch-disable-has',
         "<cpu mode='host-passthrough'>%s<feature policy='disable' name='%s'/></cpu>"
         % (NOARCH, HAS)),
        # maximum
        ('max', "<cpu mode='maximum'/>"),
        ('max-noarch', "<cpu mode='maximum'>%s</cpu>" % NOARCH),
        ('max-migratable-off', "<cpu mode='maximum' migratable='off'/>"),
        ('max-noarch-migratable-off', "<cpu mode='maximum' migratable='off'>%s</cpu>" % NOARCH),
        ('max-noarch-migratable-on', "<cpu mode='maximum' migratable='on'>%s</cpu>" % NOARCH),
        # host-model
        ('hm', "<cpu mode='host-model'/>"),
        ('hm-noarch', "<cpu mode='host-model'>%s</cpu>" % NOARCH),
        ('hm-noarch-require-pcid',
         "<cpu mode='host-model'>%s<feature policy='require' name='pcid'/></cpu>" % NOARCH),
        ('hm-noarch-policies',
         "<cpu mode='host-model'>%s"
         "<feature policy='force' name='%s'/>"
         "<feature policy='optional' name='%s'/>"
         "<feature policy='optional' name='%s'/>"
         "<feature policy='forbid' name='%s'/>"
         "<feature policy='disable' name='%s'/>"
         "</cpu>" % (NOARCH, LACKS, HAS, HOST_NOT_KVM, 'svm', HAS2)),
        ('hm-noarch-force-has',
         "<cpu mode='host-model'>%s<feature policy='force' name='%s'/></cpu>" % (NOARCH, HAS)),
        ('hm-noarch-force-lacks',
         "<cpu mode='host-model'>%s<feature policy='force' name='%s'/></cpu>" % (NOARCH, LACKS)),
        ('hm-noarch-optional-has',
         "<cpu mode='host-model'>%s<feature policy='optional' name='%s'/></cpu>"
         % (NOARCH, HAS)),
        ('hm-noarch-optional-lacks',
         "<cpu mode='host-model'>%s<feature policy='optional' name='%s'/></cpu>"
         % (NOARCH, LACKS)),
        ('hm-noarch-forbid-has',
         "<cpu mode='host-model'>%s<feature policy='forbid' name='%s'/></cpu>" % (NOARCH, HAS)),
        ('hm-noarch-forbid-lacks',
         "<cpu mode='host-model'>%s<feature policy='forbid' name='%s'/></cpu>"
         % (NOARCH, LACKS)),
        ('hm-noarch-require-lacks',
         "<cpu mode='host-model'>%s<feature policy='require' name='%s'/></cpu>"
         % (NOARCH, LACKS)),
        ('hm-noarch-require-avx2',
         "<cpu mode='host-model'>%s<feature policy='require' name='%s'/></cpu>"
         % (NOARCH, HOST_NOT_KVM)),
        ('hm-noarch-disable-has',
         "<cpu mode='host-model'>%s<feature policy='disable' name='%s'/></cpu>"
         % (NOARCH, HAS)),
        ('hm-noarch-require-invtsc',
         "<cpu mode='host-model'>%s<feature policy='require' name='invtsc'/></cpu>" % NOARCH),
        ('hm-noarch-require-x2apic-first',
         "<cpu mode='host-model'><feature policy='require' name='x2apic'/>%s</cpu>" % NOARCH),
        ('hm-noarch-disable-model-feature',
         "<cpu mode='host-model'>%s<feature policy='disable' name='sse4.2'/></cpu>" % NOARCH),
        # the MSR 0x10a bits instead of arch-capabilities itself
        ('hm-msr-off',
         "<cpu mode='host-model'>%s</cpu>" % MSR_OFF),
        ('hp-msr-off',
         "<cpu mode='host-passthrough'>%s</cpu>" % MSR_OFF),
        ('max-msr-off',
         "<cpu mode='maximum'>%s</cpu>" % MSR_OFF),
        # features libvirt 9.0 drops as "ignored" (cmt, osxsave, ...)
        ('hm-noarch-require-osxsave',
         "<cpu mode='host-model'>%s<feature policy='require' name='osxsave'/></cpu>" % NOARCH),
        ('hm-noarch-require-topoext',
         "<cpu mode='host-model'>%s<feature policy='require' name='topoext'/></cpu>" % NOARCH),
        ('hm-noarch-msr-off-check-full',
         "<cpu mode='host-model' check='full'>%s%s</cpu>" % (NOARCH, MSR_OFF)),
        ('hm-noarch-check-none', "<cpu mode='host-model' check='none'>%s</cpu>" % NOARCH),
        ('hm-noarch-check-full', "<cpu mode='host-model' check='full'>%s</cpu>" % NOARCH),
        ('hm-check-full', "<cpu mode='host-model' check='full'/>"),
        ('hm-noarch-topology',
         "<cpu mode='host-model'><topology sockets='1' cores='1' threads='1'/>%s</cpu>"
         % NOARCH),
        ('hm-noarch-topology-clusters',
         "<cpu mode='host-model'><topology sockets='1' dies='1' clusters='1' cores='1'"
         " threads='1'/>%s</cpu>" % NOARCH),
        ('hm-noarch-match-minimum', "<cpu mode='host-model' match='minimum'>%s</cpu>" % NOARCH),
        ('hm-noarch-match-strict', "<cpu mode='host-model' match='strict'>%s</cpu>" % NOARCH),
        ('hm-noarch-fallback-allow',
         "<cpu mode='host-model'><model fallback='allow'/>%s</cpu>" % NOARCH),
        ('hm-noarch-vendor-id',
         "<cpu mode='host-model'><model vendor_id='HostCPUTest1'/>%s</cpu>" % NOARCH),
        ('hm-noarch-model-name',
         "<cpu mode='host-model'><model>EPYC</model>%s</cpu>" % NOARCH),
        ('hm-noarch-cache-emulate',
         "<cpu mode='host-model'><cache level='3' mode='emulate'/>%s</cpu>" % NOARCH),
        ('hm-noarch-cache-passthrough',
         "<cpu mode='host-model'><cache mode='passthrough'/>%s</cpu>" % NOARCH),
        ('hm-noarch-maxphys-emulate',
         "<cpu mode='host-model'><maxphysaddr mode='emulate' bits='42'/>%s</cpu>" % NOARCH),
        ('hm-noarch-maxphys-emulate-nobits',
         "<cpu mode='host-model'><maxphysaddr mode='emulate'/>%s</cpu>" % NOARCH),
        ('hm-noarch-maxphys-passthrough',
         "<cpu mode='host-model'><maxphysaddr mode='passthrough'/>%s</cpu>" % NOARCH),
        ('hm-migratable-on', "<cpu mode='host-model' migratable='on'/>"),
        ('hm-noarch-duplicate-feature',
         "<cpu mode='host-model'>%s<feature policy='require' name='%s'/>"
         "<feature policy='disable' name='%s'/></cpu>" % (NOARCH, HAS, HAS)),
        ('hm-noarch-unknown-feature',
         "<cpu mode='host-model'>%s<feature policy='require' name='no-such-feature'/></cpu>"
         % NOARCH),
    ]
    for model in CUSTOM_MODELS:
        for suffix, xml in custom_variants(model):
            cases.append(('c-%s%s' % (model, suffix), xml))
    cases += [
        ('c-qemu64-check-none', "<cpu check='none'><model>qemu64</model></cpu>"),
        ('c-qemu64-check-full', "<cpu check='full'><model>qemu64</model></cpu>"),
        ('c-qemu64-disable-svm',
         "<cpu><model>qemu64</model><feature policy='disable' name='svm'/></cpu>"),
        ('c-qemu64-disable-svm-pni',
         "<cpu><model>qemu64</model><feature policy='disable' name='svm'/>"
         "<feature policy='disable' name='pni'/></cpu>"),
        ('c-kvm64-disable-pni',
         "<cpu><model>kvm64</model><feature policy='disable' name='pni'/></cpu>"),
        # which host CPU does check='partial' compare against under kvm (capabilities' CPUID
        # host CPU, the QEMU host-model, or both)?  And what does QEMU then really give?
        ('c-kvm64-require-pcid',
         "<cpu><model>kvm64</model><feature policy='require' name='pcid'/></cpu>"),
        ('c-kvm64-require-avx2',
         "<cpu><model>kvm64</model><feature policy='require' name='avx2'/></cpu>"),
        ('c-kvm64-require-topoext',
         "<cpu><model>kvm64</model><feature policy='require' name='topoext'/></cpu>"),
        ('c-kvm64-require-invtsc',
         "<cpu><model>kvm64</model><feature policy='require' name='invtsc'/></cpu>"),
        ('c-kvm64-require-arch-capabilities',
         "<cpu><model>kvm64</model><feature policy='require' name='arch-capabilities'/></cpu>"),
        # MSR 0x10a on a model whose CPUID level stops below leaf 7, where arch-capabilities is
        # announced: newer kernels refuse the nonzero write.  erms (leaf 7 EBX) and xsaveopt (leaf
        # 0xD) make QEMU raise the level, md-clear (leaf 7 EDX) does not.
        ('c-486-arch-capabilities',
         "<cpu check='none'><model>486</model>"
         "<feature policy='require' name='arch-capabilities'/></cpu>"),
        ('c-486-arch-capabilities-mds-no',
         "<cpu check='none'><model>486</model><feature policy='require' name='arch-capabilities'/>"
         "<feature policy='require' name='mds-no'/></cpu>"),
        ('c-486-arch-capabilities-mds-no-erms',
         "<cpu check='none'><model>486</model><feature policy='require' name='arch-capabilities'/>"
         "<feature policy='require' name='mds-no'/><feature policy='require' name='erms'/></cpu>"),
        ('c-486-arch-capabilities-mds-no-xsaveopt',
         "<cpu check='none'><model>486</model><feature policy='require' name='arch-capabilities'/>"
         "<feature policy='require' name='mds-no'/><feature policy='require' name='xsaveopt'/></cpu>"),
        ('c-486-arch-capabilities-mds-no-md-clear',
         "<cpu check='none'><model>486</model><feature policy='require' name='arch-capabilities'/>"
         "<feature policy='require' name='mds-no'/><feature policy='require' name='md-clear'/></cpu>"),
        ('c-pentium3-arch-capabilities-rdctl-no',
         "<cpu check='none'><model>pentium3</model><feature policy='require' name='arch-capabilities'/>"
         "<feature policy='require' name='rdctl-no'/></cpu>"),
        ('c-Westmere-arch-capabilities-mds-no',
         "<cpu check='none'><model>Westmere</model><feature policy='require' name='arch-capabilities'/>"
         "<feature policy='require' name='mds-no'/></cpu>"),
        ('c-kvm64-require-umip',
         "<cpu><model>kvm64</model><feature policy='require' name='umip'/></cpu>"),
        ('c-kvm64-require-osxsave',
         "<cpu><model>kvm64</model><feature policy='require' name='osxsave'/></cpu>"),
        ('c-kvm64-require-cmt',
         "<cpu><model>kvm64</model><feature policy='require' name='cmt'/></cpu>"),
        ('c-EPYC-strict', "<cpu match='strict'><model>EPYC</model></cpu>"),
        ('c-EPYC-disable-svm',
         "<cpu><model>EPYC</model><feature policy='disable' name='svm'/></cpu>"),
        ('c-EPYC-vendor-amd', "<cpu><model>EPYC</model><vendor>AMD</vendor></cpu>"),
        ('c-EPYC-vendor-intel', "<cpu><model>EPYC</model><vendor>Intel</vendor></cpu>"),
        ('c-EPYC-Rome-check-full', "<cpu check='full'><model>EPYC-Rome</model></cpu>"),
        ('c-topology-only', "<cpu><topology sockets='1' cores='1' threads='1'/></cpu>"),
        ('c-topology-clusters',
         "<cpu><topology sockets='1' dies='1' clusters='1' cores='1' threads='1'/></cpu>"),
        ('c-qemu64-vendor-id', "<cpu><model vendor_id='HostCPUTest1'>qemu64</model></cpu>"),
        ('c-vendor-id-only', "<cpu><model vendor_id='HostCPUTest1'/></cpu>"),
        ('c-vendor-id-short', "<cpu><model vendor_id='short'>qemu64</model></cpu>"),
        ('c-vendor-no-model', "<cpu><vendor>AMD</vendor></cpu>"),
        ('c-features-no-model', "<cpu><feature policy='require' name='%s'/></cpu>" % HAS),
        ('c-model-empty', "<cpu mode='custom'><model fallback='forbid'/></cpu>"),
        ('c-migratable-on', "<cpu migratable='on'><model>qemu64</model></cpu>"),
        ('c-unknown-model', "<cpu><model>NoSuchModel</model></cpu>"),
        ('c-feature-default-policy', "<cpu><model>qemu64</model><feature name='%s'/></cpu>"
         % HAS),
        ('c-qemu64-cache-emulate',
         "<cpu><model>qemu64</model><cache level='3' mode='emulate'/></cpu>"),
        ('c-qemu64-maxphys-emulate',
         "<cpu><model>qemu64</model><maxphysaddr mode='emulate' bits='42'/></cpu>"),
    ]
    # One model domcapabilities lists usable='no' and one usable='yes', not covered above.
    for usable in ('no', 'yes'):
        for m in domcaps_root.findall("./cpu/mode[@name='custom']/model[@usable='%s']" % usable):
            if m.text not in CUSTOM_MODELS:
                cases.append(('c-usable-%s-%s' % (usable, m.text),
                              "<cpu><model>%s</model></cpu>" % m.text))
                break
    return cases


DOMAIN_TEMPLATE = """<domain type='{vt}'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='{arch}' machine='{machine}'>hvm</type>
  </os>
{cpu}  <devices>
    <emulator>{emulator}</emulator>
  </devices>
</domain>
"""


def cpu_element(domain_xml):
    """The <cpu> child of <domain> in a domain XML, verbatim, dedented by 2 spaces, or None."""
    lines = domain_xml.split('\n')
    for i, line in enumerate(lines):
        if re.match(r'^  <cpu[ />]', line):
            if line.rstrip().endswith('/>'):
                block = [line]
            else:
                j = lines.index('  </cpu>', i)
                block = lines[i:j + 1]
            return '\n'.join(l[2:] for l in block) + '\n'
    return None


class Capture:
    def __init__(self, args):
        self.args = args
        self.out = args.out
        self.tag = secrets.token_hex(3)
        self.live = []   # names of domains we created and have not removed yet
        self.conn = libvirt.open(args.uri)
        libvirt.registerErrorHandler(lambda *a: None, None)
        self.outcomes = {}

    # -- helpers ------------------------------------------------------------------------------
    def write(self, rel, text):
        path = os.path.join(self.out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'w', encoding='utf-8') as fh:
            fh.write(text)

    def remove(self, name):
        try:
            dom = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            dom = None
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                if dom.isPersistent():
                    dom.undefine()
            except libvirt.libvirtError:
                pass
        log = '/var/log/libvirt/qemu/%s.log' % name
        if os.path.exists(log):
            os.unlink(log)
        if name in self.live:
            self.live.remove(name)

    def cleanup(self):
        for name in list(self.live):
            self.remove(name)

    # -- host-level files ---------------------------------------------------------------------
    def host_files(self):
        self.write('capabilities.xml', self.conn.getCapabilities())
        self.domcaps = {}
        for vt in self.args.virt_types:
            text = self.conn.getDomainCapabilities(None, ARCH, None, vt, 0)
            self.write('domcapabilities-%s.xml' % vt, text)
            self.domcaps[vt] = ET.fromstring(text)
        names = self.conn.getCPUModelNames(ARCH, 0)
        models = {'getCPUModelNames': names, 'domcapabilities': {}}
        for vt, root in self.domcaps.items():
            custom = root.find("./cpu/mode[@name='custom']")
            models['domcapabilities'][vt] = {
                u: [m.text for m in custom.findall("model[@usable='%s']" % u)]
                for u in ('yes', 'no')} if custom is not None else None
        self.write('cpu-models.json', json.dumps(models, indent=2) + '\n')

    def qemucaps_cpu(self):
        """qemucaps-cpu-<vt>.xml: the CPU parts of libvirt's QEMU capabilities cache.

        libvirt keeps what it probed from QEMU in /var/cache/libvirt/qemu/capabilities/<hash>.xml
        (root only, not an API).  It is the only place libvirt 9.0 keeps QEMU's per-model
        blockers (<cpu type='kvm|tcg' name=... usable='no'><blocker name=.../>), which are
        exactly the features QEMU turns off when such a model is started, and the host CPU
        properties with migratable='no'.  We copy the <cpudata>, <hostCPU type=...> and
        <cpu type=...> elements verbatim (lines unchanged) inside a <qemuCapsCPU> wrapper.
        """
        cache = '/var/cache/libvirt/qemu/capabilities'
        try:
            files = [os.path.join(cache, f) for f in sorted(os.listdir(cache))
                     if f.endswith('.xml')]
        except OSError:
            return
        for vt in self.args.virt_types:
            emulator = self.domcaps[vt].findtext('path')
            acc = 'kvm' if vt == 'kvm' else 'tcg'
            for path in files:
                with open(path, encoding='utf-8') as fh:
                    lines = fh.read().split('\n')
                if '  <emulator>%s</emulator>' % emulator not in lines:
                    continue
                keep = []
                i = 0
                while i < len(lines):
                    line = lines[i]
                    start = (line.startswith('  <cpudata')
                             or line.startswith("  <hostCPU type='%s'" % acc)
                             or line.startswith("  <cpu type='%s'" % acc))
                    if not start:
                        i += 1
                        continue
                    if line.endswith('/>'):
                        keep.append(line)
                        i += 1
                        continue
                    end = '  </%s>' % line.strip()[1:].split()[0].rstrip('>')
                    j = lines.index(end, i)
                    keep.extend(lines[i:j + 1])
                    i = j + 1
                self.write('qemucaps-cpu-%s.xml' % vt,
                           "<qemuCapsCPU emulator='%s' type='%s'>\n%s\n</qemuCapsCPU>\n"
                           % (emulator, acc, '\n'.join(keep)))
                break

    def hostmodel_cpu_xml(self, vt):
        """domcapabilities' host-model as a <cpu> libvirt's CPU parser accepts."""
        hm = self.domcaps[vt].find("./cpu/mode[@name='host-model']")
        if hm is None or hm.get('supported') != 'yes':
            return None
        parts = ["<cpu mode='custom' match='exact'>"]
        for child in hm:
            if child.tag == 'model':
                parts.append("<model fallback='%s'>%s</model>"
                             % (child.get('fallback', 'forbid'), child.text))
            elif child.tag == 'vendor':
                parts.append('<vendor>%s</vendor>' % child.text)
            elif child.tag == 'feature':
                parts.append("<feature policy='%s' name='%s'/>"
                             % (child.get('policy'), child.get('name')))
        parts.append('</cpu>')
        return ''.join(parts)

    def baselines(self):
        """baseline-<what>-<vt>.xml; <what> says the input and the flags."""
        expand = libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
        migr = libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE
        caps = ET.fromstring(self.conn.getCapabilities())
        host_cpu = ET.tostring(caps.find('./host/cpu'), encoding='unicode')
        self.expanded_hostmodel = {}
        for vt in self.args.virt_types:
            root = self.domcaps[vt]
            emulator = root.findtext('path')
            machine = root.findtext('machine')
            inputs = [('hostmodel', self.hostmodel_cpu_xml(vt)), ('capshost', host_cpu)]
            inputs += [('model-%s' % m, "<cpu mode='custom' match='exact'><model>%s</model></cpu>"
                        % m) for m in CUSTOM_MODELS]
            for what, xml in inputs:
                if xml is None:
                    continue
                self.write('baseline-input-%s-%s.xml' % (what, vt), xml + '\n') \
                    if what == 'hostmodel' else None
                for fname, flags in (('baseline', 0), ('baseline-expand', expand),
                                     ('baseline-expand-migratable', expand | migr)):
                    if what.startswith('model-') and flags != expand:
                        continue
                    if what == 'hostmodel':
                        base = '%s-%s' % (fname, vt)     # baseline-expand-kvm.xml etc.
                    else:
                        base = '%s-%s-%s' % (fname, what, vt)
                    try:
                        res = self.conn.baselineHypervisorCPU(emulator, ARCH, machine, vt,
                                                              [xml], flags)
                        self.write(base + '.xml', res)
                        if what == 'hostmodel' and flags == expand:
                            self.expanded_hostmodel[vt] = ET.fromstring(res)
                    except libvirt.libvirtError as err:
                        self.write(base + '.error.txt', err.get_error_message() + '\n')

    def versions(self):
        def run(cmd):
            try:
                return subprocess.run(cmd, capture_output=True, text=True,
                                      check=False).stdout.strip()
            except OSError:
                return None

        def ver(n):
            return '%d.%d.%d' % (n // 1000000, n // 1000 % 1000, n % 1000)

        caps = ET.fromstring(self.conn.getCapabilities())
        hcpu = caps.find('./host/cpu')
        cpuinfo = {}
        with open('/proc/cpuinfo', encoding='utf-8') as fh:
            for line in fh:
                if ':' in line:
                    k, v = line.split(':', 1)
                    cpuinfo.setdefault(k.strip(), v.strip())
                if not line.strip():
                    break
        pkgs = {}
        for p in ('libvirt-daemon', 'libvirt-daemon-system', 'libvirt-clients',
                  'qemu-system-x86', 'python3-libvirt', 'ovmf'):
            pkgs[p] = run(['dpkg-query', '-W', '-f', '${Version}', p]) or None
        features_used = {}
        for f in (HAS, HAS2, LACKS, HOST_NOT_KVM, 'svm', 'pcid', 'invtsc', 'x2apic', 'sse4.2',
                  'arch-capabilities'):
            features_used[f] = {}
            for vt in self.args.virt_types:
                hm = self.domcaps[vt].find("./cpu/mode[@name='host-model']")
                listed = None
                if hm is not None:
                    el = hm.find("feature[@name='%s']" % f)
                    listed = el.get('policy') if el is not None else None
                exp = self.expanded_hostmodel.get(vt)
                expanded = None
                if exp is not None:
                    el = exp.find("feature[@name='%s']" % f)
                    expanded = el.get('policy') if el is not None else None
                features_used[f][vt] = {'domcaps_host_model': listed,
                                        'baseline_expand': expanded}
            features_used[f]['capabilities_host'] = (
                hcpu.find("feature[@name='%s']" % f) is not None)
        data = {
            'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
            'libvirt': ver(self.conn.getLibVersion()),
            'hypervisor_version': ver(self.conn.getVersion()),
            'qemu': run(['qemu-system-x86_64', '--version']).splitlines()[0],
            'packages': pkgs,
            'kernel': platform.release(),
            'os': run(['sh', '-c', '. /etc/os-release; echo "$PRETTY_NAME"']),
            'host_cpu': {
                'model_name': cpuinfo.get('model name'),
                'vendor_id': cpuinfo.get('vendor_id'),
                'family': cpuinfo.get('cpu family'),
                'model': cpuinfo.get('model'),
                'stepping': cpuinfo.get('stepping'),
                'libvirt_model': hcpu.findtext('model'),
                'libvirt_vendor': hcpu.findtext('vendor'),
                'hypervisor': 'nested KVM' if 'hypervisor' in cpuinfo.get('flags', '') else None,
            },
            'domcapabilities': {vt: {'emulator': r.findtext('path'),
                                     'machine': r.findtext('machine')}
                                for vt, r in self.domcaps.items()},
            'features_used': features_used,
            'command': 'sudo /usr/bin/python3 scripts/capture_fixtures.py',
        }
        self.write('versions.json', json.dumps(data, indent=2) + '\n')

    # -- guests -------------------------------------------------------------------------------
    def qemu_cpu_arg(self, name):
        log = '/var/log/libvirt/qemu/%s.log' % name
        try:
            with open(log, encoding='utf-8', errors='replace') as fh:
                text = fh.read()
        except OSError:
            return None
        found = re.findall(r'(?:^|\s)-cpu\s+(\S+)', text)
        return found[-1] + '\n' if found else None

    def run_case(self, vt, case, cpu_xml):
        root = self.domcaps[vt]
        name = 'hostcpu-capture-%s-%s-%s' % (self.tag, vt, case)
        prefix = 'define/%s-%s' % (vt, case)
        out = {'given': cpu_xml is not None}
        cpu_block = '  %s\n' % cpu_xml if cpu_xml is not None else ''
        dom_xml = DOMAIN_TEMPLATE.format(vt=vt, name=name, arch=ARCH,
                                         machine=root.findtext('machine'),
                                         emulator=root.findtext('path'), cpu=cpu_block)
        if cpu_xml is not None:
            self.write(prefix + '.given.xml', cpu_xml + '\n')
        if case == 'hm':
            self.write(prefix + '.domain.xml', dom_xml)
        for stale in ('.inactive.xml', '.update-cpu.xml', '.update-cpu.error.txt', '.live.xml',
                      '.error.txt', '.qemu-cpu.txt'):
            path = os.path.join(self.out, prefix + stale)
            if os.path.exists(path):
                os.unlink(path)
        self.live.append(name)
        try:
            try:
                dom = self.conn.defineXML(dom_xml)
            except libvirt.libvirtError as err:
                out.update(defined=False, started=False, error_stage='define',
                           error=err.get_error_message())
                self.write(prefix + '.error.txt', err.get_error_message() + '\n')
                return out
            out['defined'] = True
            inactive = cpu_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if inactive is not None:
                self.write(prefix + '.inactive.xml', inactive)
            out['inactive_has_cpu'] = inactive is not None
            try:
                upd = cpu_element(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE
                                              | libvirt.VIR_DOMAIN_XML_UPDATE_CPU))
                if upd is not None:
                    self.write(prefix + '.update-cpu.xml', upd)
                out['update_cpu'] = 'ok' if upd is not None else 'no-cpu'
            except libvirt.libvirtError as err:
                self.write(prefix + '.update-cpu.error.txt', err.get_error_message() + '\n')
                out['update_cpu'] = 'error'
                out['update_cpu_error'] = err.get_error_message()
            try:
                dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            except libvirt.libvirtError as err:
                out.update(started=False, error_stage='start', error=err.get_error_message())
                self.write(prefix + '.error.txt', err.get_error_message() + '\n')
                return out
            out['started'] = True
            live = cpu_element(dom.XMLDesc(0))
            if live is not None:
                self.write(prefix + '.live.xml', live)
            out['live_has_cpu'] = live is not None
            arg = self.qemu_cpu_arg(name)
            if arg:
                self.write(prefix + '.qemu-cpu.txt', arg)
            return out
        finally:
            self.remove(name)

    def guests(self):
        pattern = re.compile(self.args.cases) if self.args.cases else None
        path = os.path.join(self.out, 'outcomes.json')
        if pattern and os.path.exists(path):
            with open(path, encoding='utf-8') as fh:
                self.outcomes = json.load(fh)
        for vt in self.args.virt_types:
            self.outcomes.setdefault(vt, {})
            for case, cpu_xml in build_cases(self.domcaps[vt]):
                if pattern and not pattern.search(case):
                    continue
                res = self.run_case(vt, case, cpu_xml)
                self.outcomes[vt][case] = res
                state = 'started' if res.get('started') else (
                    '%s failed: %s' % (res.get('error_stage'), res.get('error')))
                print('%-4s %-40s %s' % (vt, case, state), flush=True)
        self.write('outcomes.json', json.dumps(self.outcomes, indent=2, sort_keys=True) + '\n')


# -- README table -----------------------------------------------------------------------------
def _feats(el):
    return [] if el is None else [(f.get('name'), f.get('policy')) for f in el.findall('feature')]


def _head(el):
    """Short text for a <cpu>'s attributes and non-feature children."""
    text = ' '.join(el.get(k) for k in ('mode', 'match', 'check') if el.get(k))
    if el.get('migratable'):
        text += ' migratable=' + el.get('migratable')
    model = el.find('model')
    if model is not None:
        text += ', %s' % (model.text or '(no name)')
        for attr in ('fallback', 'vendor_id'):
            if model.get(attr):
                text += ' %s=%s' % (attr, model.get(attr))
    if el.find('vendor') is not None:
        text += ', vendor ' + el.findtext('vendor')
    for tag in ('topology', 'cache', 'maxphysaddr'):
        child = el.find(tag)
        if child is not None:
            text += ', %s(%s)' % (tag, ' '.join('%s=%s' % kv for kv in child.attrib.items()))
    return text


def _fdiff(old, new):
    """How feature list `new` differs from `old`: changed in place, appended, dropped."""
    dold, dnew = dict(old), dict(new)
    changed = ['%s %s>%s' % (n, dold[n], p) for n, p in new if n in dold and dold[n] != p]
    appended = ['%s:%s' % (n, p) for n, p in new if n not in dold]
    dropped = [n for n, dummy in old if n not in dnew]
    parts = []
    if changed:
        parts.append('changed ' + ', '.join(changed))
    if appended:
        parts.append('appended ' + ', '.join(appended))
    if dropped:
        parts.append('dropped ' + ', '.join(dropped))
    common_old = [n for n, dummy in old if n in dnew]
    common_new = [n for n, dummy in new if n in dold]
    if common_old != common_new:
        moved = [n for n in common_new
                 if [m for m in common_old if m != n] == [m for m in common_new if m != n]]
        parts.append('moved %s' % ', '.join(
            '%s to position %d' % (n, [m for m, dummy in new].index(n) + 1) for n in moved)
            if moved else 'ORDER CHANGED')
    return '; '.join(parts) or 'none'


def _clean_error(msg):
    msg = re.sub(r'\d{4}-\d\d-\d\dT[\d:.]+Z ', '', msg.strip()).replace('\n', ' ')
    msg = msg.replace('`', "'").replace('|', '/')
    return msg if len(msg) < 200 else msg[:200] + '...'


def outcome_table(out):
    """Markdown table of outcomes.json + the define/ files (README.md of the fixtures)."""
    with open(os.path.join(out, 'outcomes.json'), encoding='utf-8') as fh:
        outcomes = json.load(fh)
    roots = {vt: ET.parse(os.path.join(out, 'domcapabilities-%s.xml' % vt)).getroot()
             for vt in outcomes}
    hostmodel = {vt: _feats(r.find("./cpu/mode[@name='host-model']")) for vt, r in roots.items()}
    order = []
    for vt, root in roots.items():
        order += [c for c, dummy in build_cases(root) if c not in order and c in outcomes[vt]]

    def load(path):
        return ET.parse(path).getroot() if os.path.exists(path) else None

    def cell(vt, case):
        res = outcomes[vt].get(case)
        if res is None:
            return 'not run'
        if not res.get('defined'):
            return '**define fails**: `%s`' % _clean_error(res['error'])
        prefix = os.path.join(out, 'define', '%s-%s' % (vt, case))
        inactive, update, live = (load(prefix + s) for s in
                                  ('.inactive.xml', '.update-cpu.xml', '.live.xml'))
        text = '`%s`' % (_head(inactive) if inactive is not None else 'no <cpu>')
        expanded = inactive is not None and (inactive.get('mode') == 'host-model'
                                             or inactive.get('match') == 'minimum')
        if update is not None:
            if expanded:
                base, what = hostmodel[vt], 'domcaps host-model'
            else:
                base, what = _feats(inactive), 'inactive'
            diff = _fdiff(base, _feats(update))
            if expanded or diff != 'none':
                text += ' · libvirt (vs %s): %s' % (what, diff)
        elif res.get('update_cpu') == 'error':
            text += ' · update-cpu error'
        if not res.get('started'):
            return '**start fails** · %s · `%s`' % (text, _clean_error(res['error']))
        text = '**starts** · %s → `%s`' % (text, _head(live))
        before = _feats(update if update is not None else inactive)
        text += ' · QEMU: %s' % _fdiff(before, _feats(live))
        return text

    rows = ['| case | given `<cpu>` | kvm | qemu (TCG) |', '|---|---|---|---|']
    for case in order:
        given = None
        for vt in outcomes:
            path = os.path.join(out, 'define', '%s-%s.given.xml' % (vt, case))
            if os.path.exists(path):
                with open(path, encoding='utf-8') as fh:
                    given = fh.read().strip()
        given = '`%s`' % given.replace('|', '/') if given else '(none)'
        rows.append('| `%s` | %s | %s | %s |' % (case, given, cell('kvm', case),
                                                 cell('qemu', case)))
    return '\n'.join(rows) + '\n'


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
    ap.add_argument('--uri', default='qemu:///system')
    ap.add_argument('--out', default=os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        'tests', 'unit', 'fixtures', 'real'))
    ap.add_argument('--virt-types', default=','.join(VIRT_TYPES),
                    type=lambda s: [v for v in s.split(',') if v])
    ap.add_argument('--cases', default=None,
                    help='only cases whose name matches this regex (keeps other outcomes)')
    ap.add_argument('--table', action='store_true',
                    help='only print the README outcome table made from the fixtures in --out')
    args = ap.parse_args()
    if args.table:
        sys.stdout.write(outcome_table(args.out))
        return 0

    cap = Capture(args)

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        cap.host_files()
        cap.qemucaps_cpu()
        cap.baselines()
        cap.versions()
        cap.guests()
    finally:
        cap.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
