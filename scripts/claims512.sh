#!/usr/bin/env bash
# The README's claims table (issue 18): the eight published claims re-judged on the same n = 512
# images per claim (exact McNemar on the paired images), at the cpu scale's attack budgets
# (atop: PGD-10 + EOT-4; diffpure/addt: the ADDT protocols' cpu cut, 10 denoising steps, PGD-5 + EOT-2; every
# record and table says so). Each `bench reproduce` prints its verdicts; outputs go to OUT.
#
#     scripts/claims512.sh [OUT]        (default runs/claims512; resumes finished runs)
#
# Measured on the 2-core development CPU: see README "The claims, judged on 512 images".
set -euo pipefail
OUT=${1:-runs/claims512}
mkdir -p "$OUT"
R=(--scale cpu --n 512 --no-diagnostics --results "$OUT")
# 1-3. AToP Table 7: AToP vs the pre-trained purifier, RT2 vs RT1, clean accuracy by transform;
#      PGD-20 under the paper's threat model (BPDA + EOT) and ours (exact gradients + EOT)
bench reproduce atop_table7 "${R[@]}" --attacks pgd,pgd_exact | tee "$OUT/atop_table7.txt"
# 4-6. ADDT's DW-box comparison on DiffPure, and ADDT vs DiffPure under PGD + EOT (ADDT's t=100, fixed_large)
bench reproduce addt_dwbox "${R[@]}" | tee "$OUT/addt_dwbox.txt"
# 7. more PGD/EOT steps lower DiffPure's accuracy (the ladder's two rungs the cpu cut keeps apart)
bench reproduce addt_q1_budgets "${R[@]}" --defenses diffpure --attacks pgd2,pgd_eot | tee "$OUT/addt_q1_budgets.txt"
# 8. AToP Table 6: l-inf adversarial training under StAdv
bench reproduce atop_table6 "${R[@]}" | tee "$OUT/atop_table6.txt"
