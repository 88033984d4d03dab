// The optimizers, gradient clipping and the sparse row updates in one include.
#pragma once

#include "engine/optim/adamw.h"
#include "engine/optim/optimizer.h"
#include "engine/optim/sgd.h"
#include "engine/optim/sparse_rows.h"
