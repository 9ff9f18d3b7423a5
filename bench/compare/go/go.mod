module kgmpbench/compare

go 1.23
